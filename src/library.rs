//! Each tenant's drawing library: persisted drawings behind the
//! [`LibraryStore`] seam, and the in-memory [`Index`] searches run against.
//!
//! Indexes load lazily from stored features (start-up never re-reads
//! drawings). Writes for one tenant go through one lock, so a rebuild cannot
//! drop a concurrent add or bring back a concurrent delete.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Instant;

use async_trait::async_trait;
use bytes::Bytes;
use serde::Serialize;

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
            let _ = self.files.delete(&drawing.file_ref).await;
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
