//! The composition root: builds the shared handles a running `serve` or
//! `work` needs from its [`Config`], on the embedded database or on Redis.
//! Holds no request- or job-specific state beyond the cancel signals of jobs
//! running in this process.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use tokio::sync::{Notify, Semaphore};
use tokio_util::sync::CancellationToken;

use crate::callback::{Outbox, Sender, Settings};
use crate::config::{Backend, Config};
use crate::embedded::Db;
use crate::engine::Limits;
use crate::gc::GcLedger;
use crate::jobs::JobStore;
use crate::library::Library;
use crate::queue::{Keys, Redis, RedisJobs, Timing};
use crate::stats::StatsStore;
use crate::store::Files;
use crate::vision::Vision;

pub struct App {
    pub config: Config,
    pub jobs: Arc<dyn JobStore>,
    pub library: Library,
    pub stats: Arc<dyn StatsStore>,
    /// What `dedup2d gc` recorded, for `/metrics`.
    pub gc: Arc<dyn GcLedger>,
    /// Ended jobs' callbacks waiting to be sent, and what sends them.
    pub outbox: Arc<dyn Outbox>,
    pub callbacks: Arc<Sender>,
    /// The external vision service, when it is the engine.
    pub vision: Option<Arc<Vision>>,
    pub files: Arc<Files>,
    pub limits: Limits,
    backing: Backing,
    /// Wakes idle runners when a job is admitted, so a new job does not wait
    /// for their polling tick.
    pub job_admitted: Notify,
    /// Cancel signals of the jobs this process is running, by job id.
    running: Mutex<HashMap<String, CancellationToken>>,
    /// Bounds the memory that uploads being received can hold.
    pub upload_permits: Arc<Semaphore>,
    shutting_down: AtomicBool,
    /// When the storage check last succeeded.
    storage_ok_at: Mutex<Option<Instant>>,
}

/// How long a successful storage check stands for `/ready`.
const STORAGE_CHECK_KEPT: std::time::Duration = std::time::Duration::from_secs(30);

/// What holds jobs and libraries.
#[derive(Clone)]
pub enum Backing {
    Embedded(Db),
    Redis { redis: Redis, jobs: Arc<RedisJobs> },
}

/// `/ready`'s answer: a failed check makes the process unready; a warning
/// is a risk an operator should fix, reported without failing.
pub struct Readiness {
    pub checks: Vec<(&'static str, Result<(), String>)>,
    pub warnings: Vec<String>,
}

impl App {
    pub async fn open(config: Config) -> anyhow::Result<Arc<App>> {
        let files = Arc::new(Files::open(&config).context("cannot open file storage")?);
        // A bad key or a missing bucket should be found now, in the log,
        // not by the first upload; the process still starts (and stays
        // unready) so an operator can see it.
        if let Err(error) = files.check().await {
            tracing::error!(message = "file storage is not usable; uploads will get 503 until it is", backend = files.backend(), %error);
        }
        let backing = match config.async_backend {
            Backend::InProcess => Backing::Embedded(Db::open(&config.data_dir, config.async_ttl)?),
            Backend::Redis => {
                let (redis, jobs) = connect_redis(&config).await?;
                Backing::Redis { redis, jobs }
            }
        };
        type Seams = (
            Arc<dyn JobStore>,
            Library,
            Arc<dyn StatsStore>,
            Arc<dyn GcLedger>,
            Arc<dyn Outbox>,
        );
        let (jobs, library, stats, gc, outbox): Seams = match &backing {
            Backing::Embedded(db) => (
                Arc::new(db.clone()),
                Library::new(Arc::new(db.clone()), files.clone()),
                Arc::new(db.clone()),
                Arc::new(db.clone()),
                Arc::new(db.clone()),
            ),
            Backing::Redis { redis, jobs } => {
                let library = Arc::new(redis.library(Keys::new(&config.redis_key_prefix, &config.arq_queue_name)));
                (
                    jobs.clone(),
                    Library::with_feed(library.clone(), library.clone(), files.clone()),
                    library,
                    jobs.clone(),
                    jobs.clone(),
                )
            }
        };
        // gc deletes only if the job store names the uploads it sweeps.
        if let Err(error) = gc.set_storage_location(&files.uploads_location()).await {
            tracing::warn!(message = "cannot record the uploads location for dedup2d gc", %error);
        }
        Ok(Arc::new(App {
            jobs,
            library,
            stats,
            gc,
            outbox,
            callbacks: Arc::new(
                Sender::new(Settings::from_config(&config)).context("cannot set up the callback HTTP client")?,
            ),
            vision: crate::vision::Settings::from_config(&config)
                .map(Vision::new)
                .transpose()
                .context("cannot set up the vision service's HTTP client")?
                .map(Arc::new),
            files,
            limits: Limits::default(),
            backing,
            job_admitted: Notify::new(),
            running: Mutex::new(HashMap::new()),
            upload_permits: Arc::new(Semaphore::new(config.max_concurrent_uploads)),
            shutting_down: AtomicBool::new(false),
            storage_ok_at: Mutex::new(None),
            config,
        }))
    }

    pub fn backing(&self) -> &Backing {
        &self.backing
    }

    /// Per-dependency readiness, as `/ready` reports it.
    pub async fn readiness(&self) -> Readiness {
        let accepting = if self.is_shutting_down() {
            Err("shutting down".to_string())
        } else {
            Ok(())
        };
        let mut warnings = Vec::new();
        let backend = match &self.backing {
            Backing::Embedded(db) => ("database", db.check().await.map_err(|e| e.to_string())),
            Backing::Redis { redis, .. } => {
                let reachable = redis.ping().await.map(drop).map_err(|e| e.to_string());
                // Asked only of a Redis that answers, so a probe while it is
                // down does not wait out the command timeout.
                if reachable.is_ok()
                    && let Ok(Some(warning)) = redis.eviction_warning().await
                {
                    warnings.push(warning);
                }
                ("redis", reachable)
            }
        };
        Readiness {
            checks: vec![
                backend,
                ("storage", self.storage_check().await),
                ("accepting", accepting),
            ],
            warnings,
        }
    }

    /// The storage check writes a probe object, so a success is trusted for
    /// [`STORAGE_CHECK_KEPT`]: probes every few seconds from every pod
    /// would be a steady stream of S3 writes. A failure is checked again on
    /// the next probe, so recovery shows at once.
    async fn storage_check(&self) -> Result<(), String> {
        let fresh = |at: &Option<Instant>| at.is_some_and(|at| at.elapsed() < STORAGE_CHECK_KEPT);
        if fresh(&self.storage_ok_at.lock().unwrap_or_else(|e| e.into_inner())) {
            return Ok(());
        }
        let checked = self.files.check().await.map_err(|e| e.to_string());
        if checked.is_ok() {
            *self.storage_ok_at.lock().unwrap_or_else(|e| e.into_inner()) = Some(Instant::now());
        }
        checked
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

/// The Redis client and job store of the distributed mode.
pub async fn connect_redis(config: &Config) -> anyhow::Result<(Redis, Arc<RedisJobs>)> {
    let redis = Redis::connect(&config.redis_url).await.with_context(|| {
        let url = crate::config::redacted_url(&config.redis_url);
        format!("cannot reach Redis at {url} (DEDUP2D_REDIS_URL)")
    })?;
    let timing = Timing {
        lease_seconds: config.lease.as_secs_f64(),
        ttl_seconds: config.async_ttl.as_secs(),
    };
    let jobs = Arc::new(redis.jobs(Keys::new(&config.redis_key_prefix, &config.arq_queue_name), timing));
    Ok((redis, jobs))
}

/// Seconds since the epoch, as job times are reported.
pub fn now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}
