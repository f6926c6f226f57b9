//! Each tenant's drawing library: persisted drawings behind the
//! [`LibraryStore`] seam, and the in-memory [`Index`] searches run against.
//!
//! Indexes load lazily from stored features (start-up never re-reads
//! drawings). Writes for one tenant go through one lock, so a rebuild cannot
//! drop a concurrent add or bring back a concurrent delete.
//!
//! When several processes share a library (the distributed mode), each
//! keeps its own indexes and [`Library::follow`]s the [`LibraryFeed`] of
//! writes made by all of them, applying each changed drawing's current
//! state to a loaded index.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use crate::engine::fine::{self, Detail, Fine};
use crate::engine::raster::Orientation;
use crate::engine::verify::Thumbnail;
use crate::engine::{
    self, Details, EngineError, Features, Fingerprint, Index, Limits, Query, Search, SearchParams, SearchResult,
};
use crate::store::{FileRef, Files, StoreError};

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Drawing {
    pub drawing_id: String,
    #[serde(skip)]
    pub tenant_id: String,
    pub file_name: String,
    pub file_hash: String,
    #[serde(skip)]
    pub file_ref: FileRef,
    #[serde(skip)]
    pub features: Features,
    pub created_at: f64,
}

/// What a query came as: the drawing, and optionally its geometry.
#[derive(Clone, Copy)]
pub struct Source<'a> {
    pub bytes: &'a Bytes,
    pub geom_json: Option<&'a serde_json::Value>,
}

#[derive(Debug, thiserror::Error)]
pub enum LibraryError {
    #[error("drawing `{0}` already exists in this library")]
    Exists(String),
    #[error("library unavailable: {0}")]
    Unavailable(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

#[async_trait]
pub trait LibraryStore: Send + Sync {
    /// `thumbnail` is the drawing's L3 thumbnail, read back by [`Self::thumbnails`].
    async fn insert(&self, drawing: &Drawing, thumbnail: Option<&[u8]>) -> Result<(), LibraryError>;
    async fn remove(&self, tenant_id: &str, drawing_id: &str) -> Result<Option<Drawing>, LibraryError>;
    async fn all(&self, tenant_id: &str) -> Result<Vec<Drawing>, LibraryError>;
    /// Oldest first, with the tenant's total.
    async fn page(&self, tenant_id: &str, limit: u32, offset: u64) -> Result<(Vec<Drawing>, u64), LibraryError>;
    async fn set_features(
        &self,
        tenant_id: &str,
        drawing_id: &str,
        features: &Features,
        thumbnail: Option<&[u8]>,
    ) -> Result<(), LibraryError>;
    async fn drawing(&self, tenant_id: &str, drawing_id: &str) -> Result<Option<Drawing>, LibraryError>;
    /// The stored thumbnails of those drawings that have one.
    async fn thumbnails(
        &self,
        tenant_id: &str,
        drawing_ids: &[String],
    ) -> Result<HashMap<String, Vec<u8>>, LibraryError>;
    /// What a search result reports of those drawings that still exist.
    async fn details(&self, tenant_id: &str, drawing_ids: &[String]) -> Result<HashMap<String, Details>, LibraryError>;
    /// Every tenant that has a drawing.
    async fn tenants(&self) -> Result<Vec<String>, LibraryError>;
}

/// A library write: the drawing was added, removed or given new features.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    pub tenant_id: String,
    pub drawing_id: String,
}

/// A place in a [`LibraryFeed`]. Only the feed that made it reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FeedPosition(String);

impl FeedPosition {
    pub fn new(position: impl Into<String>) -> FeedPosition {
        FeedPosition(position.into())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Library writes made by any process, in order, for in-memory indexes to
/// follow. A change names a drawing, not what happened to it: followers
/// read its current state, so replays and a process's own writes are
/// harmless.
#[async_trait]
pub trait LibraryFeed: Send + Sync {
    /// Where the feed is now; [`Self::since`] this position lists only the
    /// writes made after it was taken.
    async fn position(&self) -> Result<FeedPosition, LibraryError>;
    /// Up to `max` changes written after `position`, oldest first, and the
    /// position after the last of them; `None` when the feed no longer
    /// reaches back that far (changes were dropped, so indexes must reload).
    async fn since(
        &self,
        position: &FeedPosition,
        max: usize,
    ) -> Result<Option<(Vec<Change>, FeedPosition)>, LibraryError>;
}

#[derive(Default)]
struct Tenant {
    index: RwLock<Option<Arc<Index>>>,
    writer: tokio::sync::Mutex<()>,
}

pub struct Library {
    store: Arc<dyn LibraryStore>,
    files: Arc<Files>,
    tenants: Mutex<HashMap<String, Arc<Tenant>>>,
    /// Absent in the embedded mode, where this process is the only writer.
    follower: Option<Follower>,
}

/// How often [`Library::follow`] reads the feed: other processes' writes
/// show in this one's searches within about this long.
const FOLLOW_EVERY: Duration = Duration::from_millis(200);
/// Changes read from the feed at once; a backlog is read batch after batch.
const FOLLOW_BATCH: usize = 1000;

struct Follower {
    feed: Arc<dyn LibraryFeed>,
    /// Up to where the loaded indexes have the feed's changes. Taken from
    /// the feed before the first index loads, so a write made while an
    /// index loads is replayed rather than missed.
    position: tokio::sync::Mutex<Option<FeedPosition>>,
}

impl Follower {
    async fn position(&self) -> Result<FeedPosition, LibraryError> {
        let mut position = self.position.lock().await;
        if let Some(position) = position.as_ref() {
            return Ok(position.clone());
        }
        let now = self.feed.position().await?;
        *position = Some(now.clone());
        Ok(now)
    }

    async fn advance(&self, to: FeedPosition) {
        *self.position.lock().await = Some(to);
    }
}

#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct LoadedIndexes {
    pub tenants: usize,
    pub drawings: usize,
}

pub struct RebuildReport {
    pub drawings: usize,
    pub unreadable: Vec<String>,
}

impl Library {
    pub fn new(store: Arc<dyn LibraryStore>, files: Arc<Files>) -> Library {
        Library {
            store,
            files,
            tenants: Mutex::new(HashMap::new()),
            follower: None,
        }
    }

    /// A library that other processes write to as well: [`Self::follow`]
    /// keeps this process's indexes up to date with `feed`.
    pub fn with_feed(store: Arc<dyn LibraryStore>, feed: Arc<dyn LibraryFeed>, files: Arc<Files>) -> Library {
        Library {
            follower: Some(Follower {
                feed,
                position: tokio::sync::Mutex::new(None),
            }),
            ..Library::new(store, files)
        }
    }

    pub async fn add(
        &self,
        tenant_id: &str,
        drawing_id: Option<String>,
        file_name: &str,
        bytes: Bytes,
        fingerprint: Fingerprint,
        now: f64,
    ) -> Result<Drawing, LibraryError> {
        let features = fingerprint.features;
        let tenant = self.tenant(tenant_id);
        let _writer = tenant.writer.lock().await;
        let index = self.index_for_writer(tenant_id, &tenant).await?;
        let drawing_id = drawing_id.unwrap_or_else(|| uuid::Uuid::new_v4().simple().to_string());
        if index.contains(&drawing_id) {
            return Err(LibraryError::Exists(drawing_id));
        }
        let file_ref = self.files.put_drawing(tenant_id, file_name, bytes).await?;
        let drawing = Drawing {
            drawing_id,
            tenant_id: tenant_id.to_string(),
            file_name: file_name.to_string(),
            file_hash: features.file_hash.clone(),
            file_ref,
            features,
            created_at: now,
        };
        let thumbnail = fingerprint.thumbnail.map(|t| t.to_bytes());
        if let Err(e) = self.store.insert(&drawing, thumbnail.as_deref()).await {
            // An unanswered insert may still have been written (and its
            // feed entry will bring it into the index): a file without a
            // row is only wasted space, a row without its file is broken.
            if !matches!(e, LibraryError::Unavailable(_)) {
                let _ = self.files.delete(&drawing.file_ref).await;
            }
            return Err(e);
        }
        self.update_index(&tenant, |index| index.insert(&drawing.drawing_id, &drawing.features));
        Ok(drawing)
    }

    pub async fn delete(&self, tenant_id: &str, drawing_id: &str) -> Result<bool, LibraryError> {
        let tenant = self.tenant(tenant_id);
        let _writer = tenant.writer.lock().await;
        self.index_for_writer(tenant_id, &tenant).await?;
        let Some(drawing) = self.store.remove(tenant_id, drawing_id).await? else {
            return Ok(false);
        };
        self.update_index(&tenant, |index| {
            index.remove(drawing_id);
        });
        if let Err(error) = self.files.delete(&drawing.file_ref).await {
            tracing::warn!(message = "deleted drawing's file stays behind", drawing_id, %error);
        }
        Ok(true)
    }

    pub async fn page(&self, tenant_id: &str, limit: u32, offset: u64) -> Result<(Vec<Drawing>, u64), LibraryError> {
        self.store.page(tenant_id, limit, offset).await
    }

    /// Runs the engine's levels against the tenant's index, fetching L3
    /// thumbnails, (in `precise` mode) L4 drawings, and the names and
    /// hashes of the matches between steps.
    pub async fn search(
        &self,
        tenant_id: &str,
        query: &Query,
        source: Source<'_>,
        params: &SearchParams,
        fingerprint_ms: f64,
        limits: Limits,
    ) -> Result<SearchResult, LibraryError> {
        let tenant = self.tenant(tenant_id);
        let index = self.index(tenant_id, &tenant).await?;
        let mut search = Search::new(&index, &query.fingerprint, &query.probes, params);
        let wanted = search.wants_thumbnails();
        if !wanted.is_empty() {
            let started = Instant::now();
            let thumbnails: HashMap<String, Thumbnail> = self
                .store
                .thumbnails(tenant_id, &wanted)
                .await?
                .into_iter()
                .filter_map(|(id, bytes)| Some((id, Thumbnail::from_bytes(&bytes)?)))
                .collect();
            search.add_time("thumbnails_ms", elapsed_ms(started));
            search.verify(&thumbnails);
        }
        let wanted = search.wants_drawings();
        if !wanted.is_empty() {
            let started = Instant::now();
            let fines = self.compare_finely(tenant_id, source, wanted, limits).await?;
            search.refine(fines, elapsed_ms(started));
        }
        let wanted = search.wants_details();
        let mut details = HashMap::new();
        if !wanted.is_empty() {
            let started = Instant::now();
            details = self.store.details(tenant_id, &wanted).await?;
            search.add_time("details_ms", elapsed_ms(started));
        }
        Ok(search.finish(&details, fingerprint_ms))
    }

    /// L4: reads the query (from its `geom_json` when given) and each
    /// wanted drawing again at fine resolution. A drawing that cannot be
    /// read is left at its L3 score.
    async fn compare_finely(
        &self,
        tenant_id: &str,
        source: Source<'_>,
        wanted: Vec<(String, Orientation)>,
        limits: Limits,
    ) -> Result<HashMap<String, Fine>, LibraryError> {
        let bytes = source.bytes.clone();
        let geometry = source.geom_json.cloned();
        let query = blocking(move || match geometry {
            Some(json) => fine::detail_of_geom_json(&json, limits),
            None => fine::detail(&bytes, limits),
        });
        let Some(query) = query.await?.ok().flatten() else {
            return Ok(HashMap::new());
        };
        let query = Arc::new(query);
        let mut fines = HashMap::new();
        for (drawing_id, orientation) in wanted {
            let Some(drawing) = self.store.drawing(tenant_id, &drawing_id).await? else {
                continue;
            };
            let bytes = match self.files.get(&drawing.file_ref).await {
                Ok(bytes) => bytes,
                Err(StoreError::Unavailable(e)) => return Err(StoreError::Unavailable(e).into()),
                Err(_) => continue,
            };
            let query = query.clone();
            let fine = blocking(move || -> Result<Option<Fine>, EngineError> {
                let candidate: Option<Detail> = fine::detail(&bytes, limits)?;
                Ok(candidate.map(|c| fine::compare(&query, &c, orientation)))
            })
            .await?;
            if let Ok(Some(fine)) = fine {
                fines.insert(drawing_id, fine);
            }
        }
        Ok(fines)
    }

    /// Re-reads every stored drawing, recomputes its features and swaps in a
    /// fresh index. Drawings whose file is gone or no longer reads are
    /// removed from the library and reported; a storage outage aborts the
    /// rebuild and leaves the library as it was.
    pub async fn rebuild(&self, tenant_id: &str, limits: Limits) -> Result<RebuildReport, LibraryError> {
        let tenant = self.tenant(tenant_id);
        let _writer = tenant.writer.lock().await;
        let drawings = self.store.all(tenant_id).await?;
        let mut index = Index::with_capacity(drawings.len());
        let mut unreadable = Vec::new();
        for drawing in drawings {
            match self.refingerprint(&drawing, limits).await? {
                Ok(fingerprint) => {
                    let thumbnail = fingerprint.thumbnail.map(|t| t.to_bytes());
                    self.store
                        .set_features(
                            tenant_id,
                            &drawing.drawing_id,
                            &fingerprint.features,
                            thumbnail.as_deref(),
                        )
                        .await?;
                    index.insert(&drawing.drawing_id, &fingerprint.features);
                }
                Err(reason) => {
                    tracing::warn!(message = "unreadable drawing removed", drawing_id = %drawing.drawing_id, %reason);
                    self.store.remove(tenant_id, &drawing.drawing_id).await?;
                    let _ = self.files.delete(&drawing.file_ref).await;
                    unreadable.push(drawing.drawing_id);
                }
            }
        }
        let drawings = index.len();
        *tenant.index.write().unwrap_or_else(|e| e.into_inner()) = Some(Arc::new(index));
        Ok(RebuildReport { drawings, unreadable })
    }

    /// The outer error is an outage worth aborting for; the inner one says
    /// why this drawing cannot be in the library any more.
    async fn refingerprint(
        &self,
        drawing: &Drawing,
        limits: Limits,
    ) -> Result<Result<Fingerprint, String>, LibraryError> {
        let bytes = match self.files.get(&drawing.file_ref).await {
            Ok(bytes) => bytes,
            Err(StoreError::Unavailable(e)) => return Err(StoreError::Unavailable(e).into()),
            Err(gone) => return Ok(Err(gone.to_string())),
        };
        let fingerprint = blocking(move || engine::fingerprint(&bytes, limits)).await?;
        Ok(fingerprint.map_err(|e| e.to_string()))
    }

    /// Loads every tenant's index now rather than at its first search: a new
    /// worker builds its indexes before jobs wait on them.
    pub async fn preload(&self) -> Result<LoadedIndexes, LibraryError> {
        for tenant_id in self.store.tenants().await? {
            let tenant = self.tenant(&tenant_id);
            self.index(&tenant_id, &tenant).await?;
        }
        Ok(self.loaded())
    }

    pub fn loaded(&self) -> LoadedIndexes {
        let tenants = self.tenants.lock().unwrap_or_else(|e| e.into_inner());
        tenants.values().fold(LoadedIndexes::default(), |acc, t| {
            match t.index.read().unwrap_or_else(|e| e.into_inner()).as_ref() {
                Some(index) => LoadedIndexes {
                    tenants: acc.tenants + 1,
                    drawings: acc.drawings + index.len(),
                },
                None => acc,
            }
        })
    }

    /// Follows the feed of other processes' writes until `shutdown`, every
    /// [`FOLLOW_EVERY`]. Returns at once without a feed (embedded mode). A
    /// failed read is logged and tried again at the next tick.
    pub async fn follow(&self, shutdown: CancellationToken) {
        let Some(follower) = &self.follower else {
            return;
        };
        let mut tick = tokio::time::interval(FOLLOW_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tick.tick() => {}
            }
            let caught_up = tokio::select! {
                _ = shutdown.cancelled() => return,
                caught_up = self.catch_up(follower) => caught_up,
            };
            if let Err(error) = caught_up {
                tracing::warn!(message = "library feed not followed this time; retrying", %error);
            }
        }
    }

    /// Applies the feed's changes a batch at a time. The position moves
    /// only past a batch applied, so an error replays it next time.
    async fn catch_up(&self, follower: &Follower) -> Result<(), LibraryError> {
        loop {
            let from = follower.position().await?;
            let Some((changes, to)) = follower.feed.since(&from, FOLLOW_BATCH).await? else {
                return self.forget_indexes(follower).await;
            };
            let more = changes.len() >= FOLLOW_BATCH;
            self.apply(changes).await?;
            follower.advance(to).await;
            if !more {
                return Ok(());
            }
        }
    }

    /// The feed lost changes this process had not read: every loaded
    /// index may be stale, so all of them reload lazily from the store.
    /// Each is dropped under its writer lock, so a load that read the
    /// store before the new position cannot be installed afterwards.
    async fn forget_indexes(&self, follower: &Follower) -> Result<(), LibraryError> {
        let now = follower.feed.position().await?;
        let tenants: Vec<Arc<Tenant>> = self
            .tenants
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .cloned()
            .collect();
        for tenant in &tenants {
            let _writer = tenant.writer.lock().await;
            *tenant.index.write().unwrap_or_else(|e| e.into_inner()) = None;
        }
        follower.advance(now).await;
        tracing::warn!(
            message = "library feed no longer reaches back; indexes reload",
            tenants = tenants.len()
        );
        Ok(())
    }

    async fn apply(&self, changes: Vec<Change>) -> Result<(), LibraryError> {
        let mut by_tenant: HashMap<String, BTreeSet<String>> = HashMap::new();
        for change in changes {
            by_tenant.entry(change.tenant_id).or_default().insert(change.drawing_id);
        }
        for (tenant_id, drawing_ids) in by_tenant {
            self.refresh(&tenant_id, drawing_ids).await?;
        }
        Ok(())
    }

    /// Brings a loaded index up to the stored state of those drawings. A
    /// tenant no one asked for yet is skipped: its index will load what is
    /// stored now. Under the writer lock, so an index being loaded is
    /// refreshed once its load ends rather than skipped.
    async fn refresh(&self, tenant_id: &str, drawing_ids: BTreeSet<String>) -> Result<(), LibraryError> {
        let tenant = self
            .tenants
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(tenant_id)
            .cloned();
        let Some(tenant) = tenant else {
            return Ok(());
        };
        let _writer = tenant.writer.lock().await;
        let Some(index) = Self::loaded_index(&tenant) else {
            return Ok(());
        };
        let reads = drawing_ids.iter().map(|id| self.store.drawing(tenant_id, id));
        let current = futures_util::future::try_join_all(reads).await?;
        let changes: Vec<(String, Option<Drawing>)> = drawing_ids
            .into_iter()
            .zip(current)
            // Removing what the index lacks is a no-op; skipping it spares
            // a copy of an index a search holds.
            .filter(|(id, drawing)| drawing.is_some() || index.contains(id))
            .collect();
        drop(index);
        if changes.is_empty() {
            return Ok(());
        }
        self.update_index(&tenant, |index| {
            for (id, drawing) in changes {
                match drawing {
                    Some(drawing) => index.insert(&id, &drawing.features),
                    None => {
                        index.remove(&id);
                    }
                }
            }
        });
        Ok(())
    }

    fn tenant(&self, tenant_id: &str) -> Arc<Tenant> {
        let mut tenants = self.tenants.lock().unwrap_or_else(|e| e.into_inner());
        tenants.entry(tenant_id.to_string()).or_default().clone()
    }

    fn loaded_index(tenant: &Tenant) -> Option<Arc<Index>> {
        tenant.index.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// For readers. Loading takes the writer lock, so a load can never
    /// overwrite an add or delete that ran while it read the store.
    async fn index(&self, tenant_id: &str, tenant: &Tenant) -> Result<Arc<Index>, LibraryError> {
        if let Some(index) = Self::loaded_index(tenant) {
            return Ok(index);
        }
        let _writer = tenant.writer.lock().await;
        self.index_for_writer(tenant_id, tenant).await
    }

    /// For callers that hold `tenant.writer`.
    async fn index_for_writer(&self, tenant_id: &str, tenant: &Tenant) -> Result<Arc<Index>, LibraryError> {
        if let Some(index) = Self::loaded_index(tenant) {
            return Ok(index);
        }
        if let Some(follower) = &self.follower {
            follower.position().await?;
        }
        let drawings = self.store.all(tenant_id).await?;
        let mut index = Index::with_capacity(drawings.len());
        for drawing in drawings {
            index.insert(&drawing.drawing_id, &drawing.features);
        }
        let index = Arc::new(index);
        *tenant.index.write().unwrap_or_else(|e| e.into_inner()) = Some(index.clone());
        Ok(index)
    }

    /// Copy-on-write: searches keep the `Arc` they hold while a writer swaps.
    fn update_index(&self, tenant: &Tenant, change: impl FnOnce(&mut Index)) {
        let mut slot = tenant.index.write().unwrap_or_else(|e| e.into_inner());
        if let Some(current) = slot.as_mut() {
            change(Arc::make_mut(current));
        }
    }
}

async fn blocking<T: Send + 'static>(work: impl FnOnce() -> T + Send + 'static) -> Result<T, LibraryError> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| LibraryError::Unavailable(e.to_string()))
}

fn elapsed_ms(started: Instant) -> f64 {
    started.elapsed().as_secs_f64() * 1000.0
}
