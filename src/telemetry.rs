//! Logs and metrics: the tracing subscriber, the Prometheus recorder, and every
//! metric name as a constant (CONTRACT §6), so dashboards and alerts have one
//! place to check against. Rendering `/metrics` is `api`'s job.

use std::sync::OnceLock;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tracing_subscriber::EnvFilter;

use crate::config::{Config, LogFormat};

pub const JOBS_TOTAL: &str = "dedup2d_jobs_total";
pub const JOB_DURATION_SECONDS: &str = "dedup2d_job_duration_seconds";
pub const JOBS_SUBMITTED_TOTAL: &str = "dedup2d_jobs_submitted_total";
pub const JOBS_COMPLETED_TOTAL: &str = "dedup2d_jobs_completed_total";
pub const JOBS_QUEUED: &str = "dedup2d_jobs_queued";
pub const JOBS_ACTIVE: &str = "dedup2d_jobs_active";
pub const JOB_QUEUE_DEPTH: &str = "dedup2d_job_queue_depth";
pub const LEASE_RECLAIMS_TOTAL: &str = "dedup2d_lease_reclaims_total";
pub const JOBS_DEAD_LETTERED_TOTAL: &str = "dedup2d_jobs_dead_lettered_total";
pub const JOBS_DEAD_LETTER: &str = "dedup2d_jobs_dead_letter";
pub const JOB_RETRIES_TOTAL: &str = "dedup2d_job_retries_total";
pub const REDIS_RTT_SECONDS: &str = "dedup2d_redis_rtt_seconds";
pub const QUEUE_FULL_TOTAL: &str = "dedup2d_queue_full_total";
pub const CANCEL_TOTAL: &str = "dedup2d_cancel_total";
pub const TENANT_ACCESS_DENIED_TOTAL: &str = "dedup2d_tenant_access_denied_total";
pub const SEARCH_MODE_TOTAL: &str = "dedup2d_search_mode_total";
pub const FILE_UPLOADS_TOTAL: &str = "dedup2d_file_uploads_total";
pub const FILE_DOWNLOADS_TOTAL: &str = "dedup2d_file_downloads_total";
pub const FILE_DELETES_TOTAL: &str = "dedup2d_file_deletes_total";
pub const FILE_UPLOAD_BYTES: &str = "dedup2d_file_upload_bytes";
pub const FILE_OPERATION_DURATION_SECONDS: &str = "dedup2d_file_operation_duration_seconds";
pub const PAYLOAD_FORMAT_TOTAL: &str = "dedup2d_payload_format_total";
pub const LEGACY_B64_FALLBACK_TOTAL: &str = "dedup2d_legacy_b64_fallback_total";
pub const VISION_REQUESTS_TOTAL: &str = "dedupcad_vision_requests_total";
pub const VISION_REQUEST_DURATION_SECONDS: &str = "dedupcad_vision_request_duration_seconds";
pub const VISION_CIRCUIT_STATE: &str = "dedupcad_vision_circuit_state";
pub const CALLBACKS_TOTAL: &str = "dedup2d_callbacks_total";
pub const CALLBACK_DURATION_SECONDS: &str = "dedup2d_callback_duration_seconds";
pub const CALLBACK_RETRIES_TOTAL: &str = "dedup2d_callback_retries_total";
pub const CALLBACK_BLOCKED_TOTAL: &str = "dedup2d_callback_blocked_total";
// `dedup2d gc` runs as a short-lived process and records each run in the job
// store; the API and workers export these from that record, so each
// process shows the same fleet-wide values (aggregate with max, not sum).
pub const GC_RUNS_TOTAL: &str = "dedup2d_gc_runs_total";
pub const GC_FILES_DELETED_TOTAL: &str = "dedup2d_gc_files_deleted_total";
pub const GC_BYTES_FREED_TOTAL: &str = "dedup2d_gc_bytes_freed_total";
pub const GC_DURATION_SECONDS: &str = "dedup2d_gc_duration_seconds";
pub const GC_LAST_RUN_TIMESTAMP_SECONDS: &str = "dedup2d_gc_last_run_timestamp_seconds";
pub const FINGERPRINT_DURATION_SECONDS: &str = "dedup2d_fingerprint_duration_seconds";
pub const SEARCH_DURATION_SECONDS: &str = "dedup2d_search_duration_seconds";
pub const ERROR_RATE_EMA: &str = "dedup2d_error_rate_ema";
pub const RUNNERS: &str = "dedup2d_runners";
pub const HTTP_REQUESTS_TOTAL: &str = "dedup2d_http_requests_total";
pub const HTTP_REQUEST_DURATION_SECONDS: &str = "dedup2d_http_request_duration_seconds";

const DURATION_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0,
];
const BYTE_BUCKETS: &[f64] = &[
    1024.0,
    16384.0,
    65536.0,
    262_144.0,
    1_048_576.0,
    4_194_304.0,
    16_777_216.0,
    67_108_864.0,
];

/// The process-wide recorder. Installed once, so several servers started in
/// one test process share it instead of failing on the second install.
pub fn metrics_handle() -> &'static PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE.get_or_init(|| {
        let recorder = PrometheusBuilder::new()
            .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), DURATION_BUCKETS)
            .and_then(|b| b.set_buckets_for_metric(Matcher::Suffix("_bytes".into()), BYTE_BUCKETS))
            .expect("bucket lists are not empty")
            .build_recorder();
        let handle = recorder.handle();
        if metrics::set_global_recorder(recorder).is_err() {
            tracing::warn!(message = "a metrics recorder was already installed; /metrics will be empty");
        }
        describe();
        start_at_zero();
        handle
    })
}

fn describe() {
    use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
    describe_counter!(JOBS_TOTAL, "Jobs that reached a terminal status, by status");
    describe_histogram!(JOB_DURATION_SECONDS, Unit::Seconds, "Time from job start to its end");
    describe_counter!(JOBS_SUBMITTED_TOTAL, "Async jobs admitted to the queue");
    describe_counter!(JOBS_COMPLETED_TOTAL, "Async jobs that completed successfully");
    describe_gauge!(JOBS_QUEUED, "Jobs waiting to run");
    describe_gauge!(JOBS_ACTIVE, "Jobs running now");
    describe_gauge!(JOB_QUEUE_DEPTH, "Jobs holding queue capacity (pending and running)");
    describe_counter!(
        LEASE_RECLAIMS_TOTAL,
        "Running jobs put back in the queue because their worker stopped heartbeating"
    );
    describe_counter!(
        JOBS_DEAD_LETTERED_TOTAL,
        "Jobs failed after too many deliveries and kept on the dead-letter list"
    );
    describe_gauge!(JOBS_DEAD_LETTER, "Jobs on the dead-letter list");
    describe_counter!(
        JOB_RETRIES_TOTAL,
        "Job steps retried after a transient error (Redis, storage)"
    );
    describe_gauge!(REDIS_RTT_SECONDS, Unit::Seconds, "Round-trip time of a Redis PING");
    describe_counter!(
        PAYLOAD_FORMAT_TOTAL,
        "Job payloads a worker read, by what carried the file (file_ref, file_bytes_b64, both, none)"
    );
    describe_counter!(
        LEGACY_B64_FALLBACK_TOTAL,
        "Jobs whose file was read from the payload's inline file_bytes_b64"
    );
    describe_counter!(QUEUE_FULL_TOTAL, "Async submits refused with JOB_QUEUE_FULL");
    describe_counter!(CANCEL_TOTAL, "Cancel requests, by result");
    describe_counter!(
        TENANT_ACCESS_DENIED_TOTAL,
        "Requests for another tenant's job, by operation"
    );
    describe_counter!(SEARCH_MODE_TOTAL, "Searches requested, by mode");
    describe_counter!(FILE_UPLOADS_TOTAL, "File writes to storage, by backend and status");
    describe_counter!(FILE_DOWNLOADS_TOTAL, "File reads from storage, by backend and status");
    describe_counter!(FILE_DELETES_TOTAL, "File deletes in storage, by backend and status");
    describe_histogram!(FILE_UPLOAD_BYTES, Unit::Bytes, "Size of files written to storage");
    describe_histogram!(FILE_OPERATION_DURATION_SECONDS, Unit::Seconds, "Storage call latency");
    describe_counter!(
        VISION_REQUESTS_TOTAL,
        "Calls to the external vision service, by status (success, error, refused)"
    );
    describe_histogram!(
        VISION_REQUEST_DURATION_SECONDS,
        Unit::Seconds,
        "Duration of one call to the vision service"
    );
    describe_gauge!(
        VISION_CIRCUIT_STATE,
        "The vision service's circuit breaker: 0 closed, 1 open, 2 half-open"
    );
    describe_counter!(CALLBACKS_TOTAL, "Callbacks that ended, by status (success, failed)");
    describe_histogram!(
        CALLBACK_DURATION_SECONDS,
        Unit::Seconds,
        "Duration of one callback POST"
    );
    describe_counter!(CALLBACK_RETRIES_TOTAL, "Callback attempts that will be tried again");
    describe_counter!(
        CALLBACK_BLOCKED_TOTAL,
        "Callback URLs or addresses refused, by reason (private_network, scheme, allowlist, …)"
    );
    describe_counter!(
        GC_RUNS_TOTAL,
        "Recorded `dedup2d gc` runs, fleet-wide, by mode (execute, dry_run)"
    );
    describe_counter!(GC_FILES_DELETED_TOTAL, "Uploads `dedup2d gc` deleted, fleet-wide");
    describe_counter!(
        GC_BYTES_FREED_TOTAL,
        Unit::Bytes,
        "Bytes `dedup2d gc` freed, fleet-wide"
    );
    describe_gauge!(
        GC_DURATION_SECONDS,
        Unit::Seconds,
        "How long the last executing `dedup2d gc` run took"
    );
    describe_gauge!(
        GC_LAST_RUN_TIMESTAMP_SECONDS,
        Unit::Seconds,
        "When the last executing `dedup2d gc` run finished (0: never)"
    );
    describe_histogram!(
        FINGERPRINT_DURATION_SECONDS,
        Unit::Seconds,
        "Reading a query drawing: decode or render, hashes, thumbnail"
    );
    describe_histogram!(
        SEARCH_DURATION_SECONDS,
        Unit::Seconds,
        "Running a search's levels against a tenant's index, by mode"
    );
    describe_gauge!(
        ERROR_RATE_EMA,
        "Share of this process's HTTP answers that were 5xx, as an exponential moving average over about the last 50"
    );
    describe_gauge!(
        RUNNERS,
        "Job runner loops this process runs (0 for an API of the distributed mode)"
    );
    describe_counter!(HTTP_REQUESTS_TOTAL, "HTTP requests answered, by status class");
    describe_histogram!(HTTP_REQUEST_DURATION_SECONDS, Unit::Seconds, "HTTP request latency");
}

/// Counters exist from start-up at 0, so rates and alerts see a series
/// before the first event instead of nothing.
fn start_at_zero() {
    for status in crate::jobs::Status::ALL.iter().filter(|s| s.is_terminal()) {
        metrics::counter!(JOBS_TOTAL, "status" => status.as_str()).absolute(0);
    }
    for name in [
        JOBS_SUBMITTED_TOTAL,
        JOBS_COMPLETED_TOTAL,
        QUEUE_FULL_TOTAL,
        LEASE_RECLAIMS_TOTAL,
        JOBS_DEAD_LETTERED_TOTAL,
        JOB_RETRIES_TOTAL,
        LEGACY_B64_FALLBACK_TOTAL,
        CALLBACK_RETRIES_TOTAL,
    ] {
        metrics::counter!(name).absolute(0);
    }
    for format in crate::jobs::PayloadFormat::ALL {
        metrics::counter!(PAYLOAD_FORMAT_TOTAL, "format" => format.as_str()).absolute(0);
    }
    for status in ["success", "failed"] {
        metrics::counter!(CALLBACKS_TOTAL, "status" => status).absolute(0);
    }
    for gauge in [ERROR_RATE_EMA, RUNNERS] {
        metrics::gauge!(gauge).set(0.0);
    }
    for reason in [
        "private_network",
        "scheme",
        "userinfo",
        "allowlist",
        "invalid_url",
        "dns",
    ] {
        metrics::counter!(CALLBACK_BLOCKED_TOTAL, "reason" => reason).absolute(0);
    }
    for result in ["canceled", "already_finished"] {
        metrics::counter!(CANCEL_TOTAL, "result" => result).absolute(0);
    }
    for operation in ["get", "cancel"] {
        metrics::counter!(TENANT_ACCESS_DENIED_TOTAL, "operation" => operation).absolute(0);
    }
    for mode in ["fast", "balanced", "precise"] {
        metrics::counter!(SEARCH_MODE_TOTAL, "mode" => mode).absolute(0);
    }
}

/// Every metric name declared above, read from this file's source, so the
/// tests that check dashboards, alerts and scrapes cannot miss a new one.
pub fn declared_names() -> Vec<&'static str> {
    include_str!("telemetry.rs")
        .lines()
        .filter(|line| line.starts_with("pub const ") && line.contains(": &str = \""))
        .filter_map(|line| line.split('"').nth(1))
        .collect()
}

/// Each answer's weight in [`ERROR_RATE_EMA`]: about the last 50 answers.
const ERROR_RATE_WEIGHT: f64 = 0.02;

/// Folds one HTTP answer into `dedup2d_error_rate_ema`.
pub fn observe_answer(server_error: bool) {
    use std::sync::atomic::{AtomicU64, Ordering};
    static EMA: AtomicU64 = AtomicU64::new(0);
    let sample = if server_error { 1.0 } else { 0.0 };
    let mut next = 0.0;
    let _ = EMA.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |bits| {
        let current = f64::from_bits(bits);
        next = current + ERROR_RATE_WEIGHT * (sample - current);
        Some(next.to_bits())
    });
    metrics::gauge!(ERROR_RATE_EMA).set(next);
}

/// Installs the log subscriber. A second call (tests) keeps the first.
pub fn init_logging(config: &Config) {
    let filter = EnvFilter::builder().parse_lossy(&config.log);
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match config.log_format {
        LogFormat::Json => builder.json().try_init(),
        LogFormat::Text => builder.try_init(),
    };
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    fn emitted() -> BTreeSet<String> {
        super::declared_names().into_iter().map(str::to_string).collect()
    }

    /// Metric names a text mentions; a histogram's series count as it.
    fn used(text: &str, emitted: &BTreeSet<String>) -> BTreeSet<String> {
        // File names (`dedup2d_test.yml`) keep their dot and are skipped.
        text.split(|c: char| !(c.is_ascii_alphanumeric() || matches!(c, '_' | ':' | '.')))
            .filter(|t| (t.starts_with("dedup2d_") || t.starts_with("dedupcad_")) && !t.ends_with('_'))
            .filter(|t| !t.contains('.'))
            .map(|t| {
                ["_bucket", "_sum", "_count"]
                    .iter()
                    .filter_map(|suffix| t.strip_suffix(suffix))
                    .find(|base| emitted.contains(*base))
                    .unwrap_or(t)
                    .to_string()
            })
            .collect()
    }

    #[test]
    fn the_dashboard_and_the_alerts_read_only_metrics_the_binary_emits() {
        let emitted = emitted();
        assert!(emitted.len() > 30, "{emitted:?}");
        let root = env!("CARGO_MANIFEST_DIR");
        for file in ["dashboards/dedup2d.json", "alerts/dedup2d.yml"] {
            let text = std::fs::read_to_string(format!("{root}/{file}")).unwrap();
            let unknown: Vec<String> = used(&text, &emitted).difference(&emitted).cloned().collect();
            assert!(unknown.is_empty(), "{file} reads metrics nothing emits: {unknown:?}");
        }
        let dashboard: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(format!("{root}/dashboards/dedup2d.json")).unwrap()).unwrap();
        assert_eq!(dashboard["uid"], "dedup2d-dashboard");
    }
}
