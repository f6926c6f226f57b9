//! One search, the same whether the API runs it inline or a job runs it:
//! fingerprint the query off the async threads, search the tenant's index,
//! count it.

use std::time::Instant;

use bytes::Bytes;

use crate::app::App;
use crate::engine::{self, EngineError, Features, SearchParams, SearchResult};
use crate::library::LibraryError;
use crate::stats::TenantStats;
use crate::telemetry as t;

/// Features of a query or drawing and how long they took, in milliseconds.
pub async fn fingerprint(app: &App, bytes: Bytes) -> Result<(Features, f64), EngineError> {
    let limits = app.limits;
    tokio::task::spawn_blocking(move || {
        let started = Instant::now();
        engine::fingerprint(&bytes, limits).map(|f| (f, started.elapsed().as_secs_f64() * 1000.0))
    })
    .await
    .unwrap_or_else(|e| Err(EngineError::Unreadable(format!("fingerprinting stopped: {e}"))))
}

pub async fn run(
    app: &App,
    tenant_id: &str,
    query: &Features,
    params: &SearchParams,
    fingerprint_ms: f64,
) -> Result<SearchResult, LibraryError> {
    metrics::counter!(t::SEARCH_MODE_TOTAL, "mode" => params.mode.as_str()).increment(1);
    let result = app.library.search(tenant_id, query, params, fingerprint_ms).await?;
    let delta = TenantStats::processed(!result.duplicates.is_empty());
    if let Err(error) = app.stats.increment(tenant_id, delta).await {
        tracing::warn!(message = "stats not counted", %error);
    }
    Ok(result)
}
