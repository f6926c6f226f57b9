//! Seed 003's rolling upgrade on a real redis-server and `dedup2d work`:
//! payloads that carry the file by reference, inline as base64, or both,
//! all run; the API writes both only when asked to; `migrate-payloads`
//! moves inline files to storage, also while workers run.

const COMPLETED: &str = "dedup2d_jobs_total{status=\"completed\"}";

use std::collections::HashMap;

use base64::Engine as _;
use bytes::Bytes;
use dedup2d::config::{Config, Sources};
use dedup2d::jobs::{JobStore, NewJob, Payload, PayloadFormat};
use dedup2d::migrate::{self, Summary};
use dedup2d::store::Files;
use fred::prelude::KeysInterface;
use tokio_util::sync::CancellationToken;

use crate::support::cluster::Cluster;
use crate::support::process::run;
use crate::support::{payload, png};

#[tokio::test]
async fn a_mixed_fleet_of_payload_formats_all_complete() {
    let cluster = Cluster::start().await;
    let api = cluster.api(&[]).await;
    // Their uploads, on the disk the worker reads.
    let files = Files::local(
        &cluster.data_dir.join("dedup2d_uploads"),
        &cluster.data_dir.join("library"),
    )
    .unwrap();
    let stored = |job: &'static str| {
        let files = &files;
        async move { files.put_upload(job, "q.png", Bytes::from(png(1))).await.unwrap() }
    };
    let gone = stored("gone").await;
    files.delete(&gone).await.unwrap();
    let jobs = [
        ("by-ref", payload(Some(stored("by-ref").await), None)),
        ("inline", payload(None, Some(&png(1)))),
        ("both", payload(Some(stored("both").await), Some(&png(1)))),
        ("ref-gone-inline-kept", payload(Some(gone), Some(&png(1)))),
        ("neither", payload(None, None)),
        (
            "not-base64",
            Payload {
                file_bytes_b64: Some("%%%".into()),
                ..payload(None, None)
            },
        ),
    ];
    admit(&cluster, jobs.iter().map(|(id, p)| (id.to_string(), p.clone()))).await;

    let worker = cluster.worker(&[]).await;
    for (id, _) in &jobs {
        let done = api.wait_terminal(id).await;
        let expected = if id.starts_with("n") { "failed" } else { "completed" };
        assert_eq!(done["status"], expected, "{id}: {done}");
    }
    let (_, neither) = api.get("/jobs/neither").await;
    assert!(
        neither["error"]
            .as_str()
            .unwrap()
            .contains("neither file_ref nor file_bytes_b64"),
        "{neither}"
    );
    let (_, garbled) = api.get("/jobs/not-base64").await;
    assert!(garbled["error"].as_str().unwrap().contains("not base64"), "{garbled}");
    for (format, count) in [("file_ref", 1.0), ("file_bytes_b64", 2.0), ("both", 2.0), ("none", 1.0)] {
        let series = format!("dedup2d_payload_format_total{{format=\"{format}\"}}");
        assert_eq!(worker.metric(&series).await, count, "{series}");
    }
    assert_eq!(worker.metric("dedup2d_legacy_b64_fallback_total").await, 2.0);
}

#[tokio::test]
async fn the_api_inlines_uploads_only_when_asked_and_only_up_to_the_limit() {
    let cluster = Cluster::start().await;
    let small = png(1).len().to_string();
    let (_a, inlining) = cluster
        .api_process(&[
            ("DEDUP2D_JOB_PAYLOAD_INCLUDE_BYTES_B64", "1"),
            ("DEDUP2D_JOB_PAYLOAD_BYTES_B64_MAX_BYTES", &small),
        ])
        .await;
    let plain = cluster.api(&[]).await;
    let cli = cluster.redis_cli().await;
    let stored = |job: String| {
        let cli = &cli;
        async move {
            let text: String = cli.get(format!("dedup2d:payload:{job}")).await.unwrap();
            serde_json::from_str::<serde_json::Value>(&text).unwrap()
        }
    };
    let both = stored(inlining.submit(png(1)).await).await;
    assert!(both["file_ref"].is_object(), "{both}");
    let inline = base64::engine::general_purpose::STANDARD
        .decode(both["file_bytes_b64"].as_str().unwrap())
        .unwrap();
    assert_eq!(inline, png(1));
    let big = png(1)
        .into_iter()
        .chain(std::iter::repeat_n(0, 10))
        .collect::<Vec<u8>>();
    let too_big = stored(inlining.submit(big).await).await;
    assert!(
        too_big["file_ref"].is_object() && too_big.get("file_bytes_b64").is_none(),
        "{too_big}"
    );
    let by_ref = stored(plain.submit(png(1)).await).await;
    assert!(by_ref.get("file_bytes_b64").is_none(), "{by_ref}");
}

/// Jobs written by other producers, straight into the queue.
async fn admit(cluster: &Cluster, jobs: impl IntoIterator<Item = (String, Payload)>) {
    let queue = cluster.queue().await;
    for (job_id, payload) in jobs {
        let job = NewJob {
            job_id,
            created_at: 1.0,
            payload,
        };
        queue.admit(job, 1000).await.unwrap();
    }
}

async fn admit_inline(cluster: &Cluster, ids: impl Iterator<Item = String>) {
    admit(cluster, ids.map(|id| (id, payload(None, Some(&png(1)))))).await;
}

fn migration(cluster: &Cluster, execute: bool, drop_b64: bool) -> impl std::future::Future<Output = Summary> {
    let vars = HashMap::from([
        ("DEDUP2D_ASYNC_BACKEND".to_string(), "redis".to_string()),
        ("DEDUP2D_REDIS_URL".to_string(), cluster.redis.url()),
        ("DEDUP2D_DATA_DIR".to_string(), cluster.data_dir.display().to_string()),
        ("DEDUP2D_LOG".to_string(), "warn".to_string()),
    ]);
    let config = Config::load(&Sources::from_env(vars)).unwrap();
    let options = migrate::Options {
        execute,
        drop_b64,
        progress: false,
    };
    async move { migrate::run(config, options, CancellationToken::new()).await.unwrap() }
}

#[tokio::test]
async fn migrate_payloads_stores_inline_files_only_when_told_and_twice_changes_nothing() {
    let cluster = Cluster::start().await;
    let api = cluster.api(&[]).await;
    admit_inline(&cluster, (0..3).map(|i| format!("inline-{i}"))).await;
    let cli = cluster.redis_cli().await;
    let stored = |id: &'static str| {
        let cli = &cli;
        async move {
            let text: String = cli.get(format!("dedup2d:payload:{id}")).await.unwrap();
            serde_json::from_str::<Payload>(&text).unwrap().format()
        }
    };

    // The command an operator runs: a dry run by default, a JSON summary.
    let url = cluster.redis.url();
    let env = [("DEDUP2D_ASYNC_BACKEND", "redis"), ("DEDUP2D_REDIS_URL", url.as_str())];
    let out = run(&["migrate-payloads", "--json"], &env, &cluster.data_dir);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let printed: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        (printed["dry_run"].as_bool(), printed["migrated"].as_u64()),
        (Some(true), Some(3)),
        "{printed}"
    );

    let dry = migration(&cluster, false, false).await;
    assert_eq!((dry.dry_run, dry.scanned, dry.migrated), (true, 3, 3), "{dry:?}");
    assert_eq!(
        stored("inline-0").await,
        PayloadFormat::FileBytesB64,
        "a dry run writes nothing"
    );
    let done = migration(&cluster, true, false).await;
    assert_eq!((done.migrated, done.dropped_b64), (3, 0), "{done:?}");
    assert_eq!(stored("inline-0").await, PayloadFormat::Both);
    let dropped = migration(&cluster, true, true).await;
    assert_eq!((dropped.migrated, dropped.dropped_b64), (0, 3), "{dropped:?}");
    assert_eq!(stored("inline-0").await, PayloadFormat::FileRef);
    let again = migration(&cluster, true, true).await;
    assert_eq!(
        (again.unchanged, again.migrated, again.dropped_b64),
        (3, 0, 0),
        "{again:?}"
    );

    let worker = cluster.worker(&[]).await;
    for i in 0..3 {
        let done = api.wait_terminal(&format!("inline-{i}")).await;
        assert_eq!(done["status"], "completed", "{done}");
    }
    assert_eq!(worker.metric("dedup2d_legacy_b64_fallback_total").await, 0.0);
}

#[tokio::test]
async fn migrating_while_workers_run_loses_no_job_and_runs_none_twice() {
    const JOBS: usize = 60;
    let cluster = Cluster::start().await;
    let api = cluster.api(&[]).await;
    let ids: Vec<String> = (0..JOBS).map(|i| format!("live-{i}")).collect();
    admit_inline(&cluster, ids.iter().cloned()).await;
    let worker = cluster
        .worker(&[("DEDUP2D_JOB_DELAY_MS", "20"), ("DEDUP2D_WORKER_MAX_JOBS", "2")])
        .await;
    let summary = migration(&cluster, true, true).await;
    assert!(summary.failed.is_empty(), "{summary:?}");
    for id in &ids {
        let done = api.wait_terminal(id).await;
        assert_eq!(done["status"], "completed", "{id}: {done}");
    }
    assert_eq!(worker.metric(COMPLETED).await, JOBS as f64, "each job ran once");
    assert_eq!(cluster.active().await, 0);
}
