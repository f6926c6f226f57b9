//! The metrics operators' dashboards and alerts read (CONTRACT §6): after
//! real work, an API and a worker process together emit every name, and
//! `promtool check metrics` finds nothing wrong with either exposition.

use std::io::Write;
use std::process::{Command, Stdio};

use crate::support::cluster::Cluster;
use crate::support::receiver::{Receiver, Reply};
use crate::support::*;

/// CONTRACT §6's names (the test also wants every name the crate
/// declares), and the labels it lists for some of them.
const CONTRACT: &[&str] = &[
    "dedup2d_jobs_total",
    "dedup2d_job_duration_seconds",
    "dedup2d_jobs_submitted_total",
    "dedup2d_jobs_completed_total",
    "dedup2d_jobs_queued",
    "dedup2d_jobs_active",
    "dedup2d_job_queue_depth",
    "dedup2d_queue_full_total",
    "dedup2d_cancel_total",
    "dedup2d_tenant_access_denied_total",
    "dedup2d_search_mode_total",
    "dedup2d_file_uploads_total",
    "dedup2d_file_downloads_total",
    "dedup2d_file_deletes_total",
    "dedup2d_file_upload_bytes",
    "dedup2d_file_operation_duration_seconds",
    "dedup2d_callbacks_total",
    "dedup2d_callback_duration_seconds",
    "dedup2d_callback_retries_total",
    "dedup2d_callback_blocked_total",
    "dedup2d_gc_runs_total",
    "dedup2d_gc_files_deleted_total",
    "dedup2d_gc_bytes_freed_total",
    "dedup2d_gc_duration_seconds",
    "dedup2d_payload_format_total",
    "dedup2d_legacy_b64_fallback_total",
    "dedup2d_error_rate_ema",
    "dedupcad_vision_requests_total",
    "dedupcad_vision_request_duration_seconds",
    "dedupcad_vision_circuit_state",
];

const LABELS: &[(&str, &[&str])] = &[
    ("dedup2d_jobs_total", &["status"]),
    ("dedup2d_cancel_total", &["result"]),
    ("dedup2d_tenant_access_denied_total", &["operation"]),
    ("dedup2d_search_mode_total", &["mode"]),
    ("dedup2d_file_uploads_total", &["backend", "status"]),
    ("dedup2d_file_downloads_total", &["backend", "status"]),
    ("dedup2d_file_deletes_total", &["backend", "status"]),
    (
        "dedup2d_file_operation_duration_seconds_bucket",
        &["backend", "operation"],
    ),
    ("dedup2d_callback_blocked_total", &["reason"]),
    ("dedup2d_payload_format_total", &["format"]),
];

const VISION_ANSWER: &str = r#"{"success":true,"total_matches":0,"duplicates":[],"similar":[],"final_level":1,"timing":{"total_ms":1.0},"level_stats":{},"warnings":[],"error":null}"#;

/// The metric family names in an exposition (`_bucket`, `_sum`, `_count`
/// folded into their histogram).
fn families(text: &str) -> Vec<String> {
    let mut names: Vec<String> = text
        .lines()
        .filter_map(|line| line.strip_prefix("# TYPE "))
        .filter_map(|rest| rest.split_whitespace().next())
        .map(str::to_string)
        .collect();
    names.sort();
    names
}

fn promtool_check(text: &str) -> String {
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool (Debian package prometheus; .ci/run installs it)");
    child.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    format!(
        "exit {:?}\n{}{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

async fn scrape(base: &str) -> String {
    reqwest::get(format!("{base}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

#[tokio::test]
async fn an_api_and_a_worker_emit_every_contract_metric_and_promtool_accepts_them() {
    let cluster = Cluster::start().await;
    let vision = Receiver::start(vec![
        Reply {
            body: VISION_ANSWER,
            ..Reply::status(200)
        };
        10
    ])
    .await;
    let receiver = Receiver::start(vec![]).await;
    let vision_url = vision.url("");
    let callbacks = [
        ("DEDUP2D_CALLBACK_ALLOW_HTTP", "1"),
        ("DEDUP2D_CALLBACK_ALLOWED_CIDRS", "127.0.0.0/8"),
    ];
    let vision_engine = [
        ("DEDUP2D_ENGINE", "vision"),
        ("DEDUPCAD_VISION_URL", vision_url.as_str()),
    ];
    // The API searches with the built-in engine (its timings), the worker
    // through the vision service (its client's metrics).
    let (api_process, api) = cluster.api_process(&callbacks).await;
    let worker = cluster.worker(&[callbacks.as_slice(), &vision_engine].concat()).await;

    // A sync search, a job with a callback, a library drawing.
    let (status, _) = api.post("/search", Some(form(png(1), "q.png"))).await;
    assert_eq!(status, 200);
    let hook: String = form_urlencoded::byte_serialize(receiver.url("/hook").as_bytes()).collect();
    let (_, submitted) = api
        .post(&format!("/search?callback_url={hook}"), Some(form(png(2), "q.png")))
        .await;
    let job_id = submitted["job_id"].as_str().unwrap().to_string();
    assert_eq!(api.wait_terminal(&job_id).await["status"], "completed");
    receiver.wait_for(1).await;
    api.add(png(3), "d.png").await;

    let api_text = scrape(&api_process.base).await;
    let worker_text = scrape(&worker.base).await;
    let both = format!("{api_text}{worker_text}");
    let emitted = families(&both);
    let wanted = CONTRACT.iter().copied().chain(dedup2d::telemetry::declared_names());
    let missing: Vec<&str> = wanted.filter(|n| !emitted.iter().any(|e| e == n)).collect();
    assert!(missing.is_empty(), "not emitted: {missing:?}");
    for name in &emitted {
        assert!(both.contains(&format!("# HELP {name} ")), "{name} has no HELP text");
    }
    for (name, labels) in LABELS {
        let line = both
            .lines()
            .find(|l| l.starts_with(&format!("{name}{{")))
            .unwrap_or_else(|| panic!("no labelled {name} series"));
        for label in *labels {
            assert!(line.contains(&format!("{label}=\"")), "{name} lacks `{label}`: {line}");
        }
    }
    for (who, text) in [("api", &api_text), ("worker", &worker_text)] {
        let report = promtool_check(text);
        assert!(
            report.starts_with("exit Some(0)\n") && report.lines().count() == 1,
            "{who}: {report}"
        );
    }
}
