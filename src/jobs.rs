//! Async search jobs: the job model, its statuses, and the [`JobStore`] seam
//! that the embedded database implements now and Redis implements later.
//! Nothing here knows HTTP or how a backend lays out its keys.

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::engine::SearchParams;
use crate::store::FileRef;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Pending,
    InProgress,
    Completed,
    Failed,
    Canceled,
}

impl Status {
    pub const ALL: [Status; 5] = [
        Status::Pending,
        Status::InProgress,
        Status::Completed,
        Status::Failed,
        Status::Canceled,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Status::Pending => "pending",
            Status::InProgress => "in_progress",
            Status::Completed => "completed",
            Status::Failed => "failed",
            Status::Canceled => "canceled",
        }
    }

    pub fn parse(text: &str) -> Option<Status> {
        Status::ALL.into_iter().find(|s| s.as_str() == text)
    }

    pub fn is_terminal(self) -> bool {
        matches!(self, Status::Completed | Status::Failed | Status::Canceled)
    }
}

/// What a worker needs to run a job (CONTRACT §2 payload). The file is
/// `file_ref` (stored), `file_bytes_b64` (inline, as the original's
/// legacy payloads carried it, seed 003), or both during an upgrade.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Payload {
    pub tenant_id: String,
    pub file_name: String,
    pub content_type: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file_ref: Option<FileRef>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file_bytes_b64: Option<String>,
    #[serde(default)]
    pub request_params: SearchParams,
    #[serde(default)]
    pub callback_url: Option<String>,
    /// The query's geometry for L4 (see `engine::fine`); the original
    /// called it `query_geom`.
    #[serde(default, alias = "query_geom", skip_serializing_if = "Option::is_none")]
    pub geom_json: Option<serde_json::Value>,
}

/// What carried a payload's file, as `dedup2d_payload_format_total` counts it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PayloadFormat {
    FileRef,
    FileBytesB64,
    Both,
    None,
}

impl PayloadFormat {
    pub const ALL: [PayloadFormat; 4] = [Self::FileRef, Self::FileBytesB64, Self::Both, Self::None];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::FileRef => "file_ref",
            Self::FileBytesB64 => "file_bytes_b64",
            Self::Both => "both",
            Self::None => "none",
        }
    }
}

impl Payload {
    pub fn format(&self) -> PayloadFormat {
        match (self.file_ref.is_some(), self.file_bytes_b64.is_some()) {
            (true, false) => PayloadFormat::FileRef,
            (false, true) => PayloadFormat::FileBytesB64,
            (true, true) => PayloadFormat::Both,
            (false, false) => PayloadFormat::None,
        }
    }
}

#[derive(Debug, Clone)]
pub struct NewJob {
    pub job_id: String,
    pub created_at: f64,
    pub payload: Payload,
}

/// A job as clients see it (CONTRACT §1 job shape).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Job {
    pub job_id: String,
    pub tenant_id: String,
    pub status: Status,
    pub created_at: f64,
    pub started_at: Option<f64>,
    pub finished_at: Option<f64>,
    pub result: Option<serde_json::Value>,
    pub error: Option<String>,
    pub callback_status: Option<String>,
    pub callback_attempts: u32,
    pub callback_http_status: Option<u16>,
    pub callback_finished_at: Option<f64>,
    pub callback_last_error: Option<String>,
}

/// A job a runner owns until it finishes or hands it back. `attempt` fences
/// the runner: a finish for an older attempt changes nothing.
#[derive(Debug, Clone)]
pub struct Claimed {
    pub job_id: String,
    pub attempt: u32,
    pub payload: Payload,
    pub created_at: f64,
}

/// What a claim found.
#[derive(Debug, Clone)]
pub enum Claim {
    Run(Claimed),
    /// The oldest pending job could not run (delivered too often, or its
    /// payload does not read) and is `failed` now; the caller cleans up.
    Failed {
        job_id: String,
        file_ref: Option<FileRef>,
        error: String,
    },
    Empty,
}

#[derive(Debug, Clone)]
pub enum Outcome {
    Completed(serde_json::Value),
    Failed(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CancelOutcome {
    /// It was pending or running and is canceled now; the upload can go.
    Canceled {
        was: Status,
        file_ref: Option<FileRef>,
    },
    AlreadyFinished(Status),
    NotFound,
    Forbidden,
}

/// What a heartbeat found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lease {
    /// The attempt still owns the job; its lease is extended.
    Held,
    /// A client canceled the job: stop and write nothing.
    Canceled,
    /// Another attempt owns the job now, or it ended: stop and write nothing.
    Lost,
}

/// Whether a handed-back run counts against `max_deliveries`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivery {
    /// The worker was told to stop (shutdown): the job did not fail.
    Uncounted,
    /// The run gave up on an outage that outlasted its retries: a job that
    /// keeps meeting one ends on the dead-letter list, not in a loop.
    Counted,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Counts {
    pub pending: u64,
    pub running: u64,
    /// On the dead-letter list (the Redis backend keeps one).
    pub dead: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum JobError {
    #[error("the job queue is full ({current} of {max} jobs)")]
    QueueFull { max: u64, current: u64 },
    #[error("job store unavailable: {0}")]
    Unavailable(String),
}

/// How often a running job's lease is extended and its cancel checked: a
/// cancel stops a running job within this (plus one round trip).
pub const HEARTBEAT_EVERY: std::time::Duration = std::time::Duration::from_millis(500);

/// Where jobs live. Admission is one atomic step: the capacity check and the
/// insert cannot interleave with another admission.
#[async_trait]
pub trait JobStore: Send + Sync {
    async fn admit(&self, job: NewJob, max_jobs: u64) -> Result<(), JobError>;
    async fn get(&self, job_id: &str) -> Result<Option<Job>, JobError>;
    /// Newest first, with the total that matches the filter.
    async fn list(&self, tenant_id: &str, status: Option<Status>, limit: u32) -> Result<(Vec<Job>, u64), JobError>;
    async fn cancel(&self, job_id: &str, tenant_id: &str, now: f64) -> Result<CancelOutcome, JobError>;
    /// Takes the oldest pending job; one claimed `max_deliveries` times
    /// already ends `failed` instead of running again.
    async fn claim(&self, now: f64, max_deliveries: u32) -> Result<Claim, JobError>;
    /// Records the outcome unless the job was canceled or re-claimed since;
    /// returns whether it was recorded.
    async fn finish(&self, job: &Claimed, outcome: Outcome, now: f64) -> Result<bool, JobError>;
    /// Extends the lease of a running attempt, and says whether it should
    /// go on. Runners call it every [`HEARTBEAT_EVERY`].
    async fn heartbeat(&self, job: &Claimed, now: f64) -> Result<Lease, JobError>;
    /// Puts a running job back at the head of the queue, for another run.
    async fn hand_back(&self, job: &Claimed, delivery: Delivery) -> Result<(), JobError>;
    async fn counts(&self) -> Result<Counts, JobError>;
    /// Deletes finished jobs whose time to live has passed, and returns
    /// running jobs whose lease ran out to the queue (upkeep calls it).
    async fn expire(&self, now: f64) -> Result<u64, JobError>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn legacy_inline_payloads_of_the_original_still_read() {
        // Seed 003's legacy shape: no file_ref, the bytes inline, `query_geom`.
        let legacy = r#"{"tenant_id": "abc123", "file_name": "drawing.dxf",
            "content_type": "application/dxf", "file_bytes_b64": "MAo=",
            "query_geom": {"entities": []}, "request_params": {}}"#;
        let payload: Payload = serde_json::from_str(legacy).unwrap();
        assert_eq!(payload.format(), PayloadFormat::FileBytesB64);
        assert_eq!(payload.geom_json, Some(serde_json::json!({"entities": []})));
        assert_eq!(payload.request_params, SearchParams::default());

        let stored = Payload {
            file_ref: Some(FileRef::Local {
                path: "/u/j/x.dxf".into(),
            }),
            file_bytes_b64: None,
            geom_json: None,
            ..payload
        };
        let written = serde_json::to_value(&stored).unwrap();
        assert_eq!(
            written["file_ref"],
            serde_json::json!({"backend": "local", "path": "/u/j/x.dxf"})
        );
        assert!(written.get("file_bytes_b64").is_none(), "{written}");
        assert_eq!(stored.format(), PayloadFormat::FileRef);
    }
}
