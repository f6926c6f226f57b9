//! Per-tenant counters served at `GET /api/v1/stats` (seed 002): searches
//! processed, requests rejected for bad input or a full queue, and searches
//! that found a duplicate already in the library (`dup_skipped`).

use async_trait::async_trait;
use serde::Serialize;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct TenantStats {
    pub processed: u64,
    pub rejected: u64,
    pub dup_skipped: u64,
}

impl TenantStats {
    pub const REJECTED: TenantStats = TenantStats {
        processed: 0,
        rejected: 1,
        dup_skipped: 0,
    };

    /// One search done; `found_duplicate` when its result named one.
    pub fn processed(found_duplicate: bool) -> TenantStats {
        TenantStats {
            processed: 1,
            rejected: 0,
            dup_skipped: u64::from(found_duplicate),
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[error("stats unavailable: {0}")]
pub struct StatsError(pub String);

#[async_trait]
pub trait StatsStore: Send + Sync {
    async fn increment(&self, tenant_id: &str, delta: TenantStats) -> Result<(), StatsError>;
    async fn read(&self, tenant_id: &str) -> Result<TenantStats, StatsError>;
}
