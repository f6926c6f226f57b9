//! One search, the same whether the API runs it inline or a job runs it:
//! fingerprint the query off the async threads, search the tenant's index,
//! count it.

use std::time::Instant;

use bytes::Bytes;

use crate::app::App;
use crate::engine::{self, EngineError, Query, SearchParams, SearchResult};
use crate::library::LibraryError;
pub use crate::library::Source;
use crate::stats::TenantStats;
use crate::telemetry as t;
use crate::vision::{self, Vision, VisionError};

/// The external vision service's result for a query (when it is the
/// engine): its CONTRACT §3 answer as it is.
pub async fn by_vision(
    vision: &Vision,
    file_name: &str,
    content_type: &str,
    bytes: Bytes,
    params: &SearchParams,
) -> Result<serde_json::Value, VisionError> {
    metrics::counter!(t::SEARCH_MODE_TOTAL, "mode" => params.mode.as_str()).increment(1);
    let request = vision::Request {
        file_name,
        content_type,
        bytes,
        mode: params.mode.as_str(),
        max_results: u32::try_from(params.max_results).unwrap_or(u32::MAX),
    };
    vision.search(&request).await
}

/// Reads a drawing off the async threads.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, EngineError> + Send + 'static,
) -> Result<T, EngineError> {
    tokio::task::spawn_blocking(work)
        .await
        .unwrap_or_else(|e| Err(EngineError::Unreadable(format!("reading the drawing stopped: {e}"))))
}

/// A query's features and probes and how long they took, in milliseconds.
pub async fn query(app: &App, bytes: Bytes) -> Result<(Query, f64), EngineError> {
    let limits = app.limits;
    blocking(move || {
        let started = Instant::now();
        engine::query(&bytes, limits).map(|q| (q, started.elapsed().as_secs_f64() * 1000.0))
    })
    .await
    .inspect(|(_, ms)| metrics::histogram!(t::FINGERPRINT_DURATION_SECONDS).record(ms / 1000.0))
}

/// The same for a drawing going into a library.
pub async fn fingerprint(app: &App, bytes: Bytes) -> Result<engine::Fingerprint, EngineError> {
    let limits = app.limits;
    blocking(move || engine::fingerprint(&bytes, limits)).await
}

/// Only checks that the bytes are a drawing we read (no decoding): what the
/// submit path can afford before it hands the work to a job.
pub async fn inspect(app: &App, bytes: Bytes) -> Result<(), EngineError> {
    let limits = app.limits;
    blocking(move || engine::inspect(&bytes, limits).map(drop)).await
}

pub async fn run(
    app: &App,
    tenant_id: &str,
    query: &Query,
    source: Source<'_>,
    params: &SearchParams,
    fingerprint_ms: f64,
) -> Result<SearchResult, LibraryError> {
    metrics::counter!(t::SEARCH_MODE_TOTAL, "mode" => params.mode.as_str()).increment(1);
    let started = Instant::now();
    let result = app
        .library
        .search(tenant_id, query, source, params, fingerprint_ms, app.limits)
        .await?;
    metrics::histogram!(t::SEARCH_DURATION_SECONDS, "mode" => params.mode.as_str())
        .record(started.elapsed().as_secs_f64());
    let delta = TenantStats::processed(!result.duplicates.is_empty());
    if let Err(error) = app.stats.increment(tenant_id, delta).await {
        tracing::warn!(message = "stats not counted", %error);
    }
    Ok(result)
}
